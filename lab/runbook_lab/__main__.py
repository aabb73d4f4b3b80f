from runbook_lab.commands import main

raise SystemExit(main())
