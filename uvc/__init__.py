"""UVC, the method in layers: search/ (stage 1's variables and updates), cost/ (what an architecture
costs: MACs or latency), deploy/ (the frozen architecture, stage files, export), report/ and the
command lines `python -m uvc.report | uvc.evaluate | uvc.import_reference | uvc.export`."""
