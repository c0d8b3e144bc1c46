"""``python -m server.migrations "what it changes"``: draft the next revision (see __init__)."""

import sys

from server.migrations import main

sys.exit(main())
