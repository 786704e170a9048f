"""The test tree mirrors svcops's own: site/, compile/, render/, facts/, operations/, the
rollout and CLI at the top, lab/, e2e/ (the lab, end to end) and qemu/ (IPVS in a real
kernel). Helpers shared by several folders live here at the top (golden.py, netns.py,
paths.py, render_fixtures.py, ...): pytest puts this folder on sys.path for every test,
because this conftest.py is here.
"""
