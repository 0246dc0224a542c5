"""The long churn run (``python3 -m tests.soak``) and the churn engine shared with CI."""
