"""iptables fallback backend (iptables-restore text, upstream layout)."""
