"""`python -m bulk IN OUT [--model digits]`: see bulk/job.py."""
import sys

from bulk.job import main

sys.exit(main())
