"""nlportmap: a CNI ``portmap`` meta-plugin on nftables over netlink.

Run as a CNI plugin (``CNI_COMMAND`` set) or as an operator tool
(``nlportmap --help``).  Importing the package imports nothing else: every
request pays only for the modules it uses.
"""
__version__ = "0.1.0"
