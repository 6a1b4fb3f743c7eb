from alray.cli import main

raise SystemExit(main())
