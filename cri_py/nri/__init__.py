"""NRI, the Node Resource Interface: the runtime side (see adaptation.py)."""
