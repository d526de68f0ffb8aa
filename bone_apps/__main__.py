import multiprocessing
import sys

multiprocessing.freeze_support()  # first: spawned workers of a bundle must not parse CLI options

from bone_apps.cli import main  # noqa: E402

sys.exit(main())
