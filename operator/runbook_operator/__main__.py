from runbook_operator.cli import main

raise SystemExit(main())
