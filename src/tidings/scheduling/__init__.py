"""When mail may go out: sending windows in a recipient's local time, and how long a backlog takes."""
