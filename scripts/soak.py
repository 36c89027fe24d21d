#!/usr/bin/env python3
"""Soak run (not part of CI): see rvg_ros/reliability/soak.py and docs/reliability.md."""

import sys

from rvg_ros.reliability.soak import main

if __name__ == "__main__":
    sys.exit(main())
