from fleetsync.cli.main import main

raise SystemExit(main())
