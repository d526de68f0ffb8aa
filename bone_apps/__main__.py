import sys

from bone_apps.cli import main

sys.exit(main())
