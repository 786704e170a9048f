"""Push a svcops site to every node of a pyinfra inventory.

    pyinfra -y inventory/lab.py deploys/services.py

The site is the one named by ``svcops_site`` in the inventory's data (inventory/lab.py
names examples/walkthrough). The result is the same as ``svcops apply -i INVENTORY``:
the same operations (see svcops/deploy.py), with svcops.lock updated like `svcops plan`.
"""

from svcops.deploy import services

services()
