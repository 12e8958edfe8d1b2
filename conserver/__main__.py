from conserver.cli import main

raise SystemExit(main())
