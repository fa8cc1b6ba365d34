import sys

from geopurify.cli import main

sys.exit(main())
