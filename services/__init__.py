"""curvemesh processes: the broker and the seven services, one folder each."""
