from runbook_operator.entrypoints.cli import main

raise SystemExit(main())
