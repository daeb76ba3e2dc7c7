"""phxqd: the phxq daemon. Kept empty: phxqctl imports phxqd.protocol on every start."""
