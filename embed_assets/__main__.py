import sys

from embed_assets.cli import main

sys.exit(main())
