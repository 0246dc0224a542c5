"""nftables backend: netlink transport, layout, and the backend seam."""
