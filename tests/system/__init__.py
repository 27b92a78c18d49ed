"""System tests: drp installed as an operator would, under real systemd, one node per netns."""
