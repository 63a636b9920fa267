"""Suite-wide test configuration: Hypothesis profiles.

``dev`` (the default) keeps property tests quick on a laptop; ``ci`` runs more examples and prints the blob
that reproduces a failure (``@reproduce_failure``).  Pick one with ``HYPOTHESIS_PROFILE=ci``.  Neither has a
deadline: timing varies too much on shared CI machines to make slow examples fail (attrs does the same).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, max_examples=500, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
