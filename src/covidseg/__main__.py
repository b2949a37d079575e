from covidseg.cli import main

raise SystemExit(main())
