from kzoo.cli import main

raise SystemExit(main())
