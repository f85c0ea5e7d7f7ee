"""``python -m sweeper.views.report <sweep folder>``: write the report and the compare page of a sweep folder."""

import sys

from sweeper.views.report import main

sys.exit(main())
