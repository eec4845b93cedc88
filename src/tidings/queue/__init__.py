"""Every statement that enqueues, claims, leases, requeues or fans out: named, in one place."""
