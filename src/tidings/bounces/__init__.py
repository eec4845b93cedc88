"""The bounce mailbox: delivery status notifications (RFC 3464) and complaint reports (RFC 5965)
parsed, matched to the message they report on, and recorded (``tidings bounces``)."""
