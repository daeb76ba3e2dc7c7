"""phxqd: the phxq daemon. Kept empty: phxqctl imports phxqd.contract on every start."""
