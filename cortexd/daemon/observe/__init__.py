"""What the daemon shows: statuses, latency, metrics, tracker and API logs."""
