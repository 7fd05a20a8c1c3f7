"""``python -m pml_gateway``: the same as the ``pml-gateway`` console script."""

from pml_gateway.cli import main

raise SystemExit(main())
