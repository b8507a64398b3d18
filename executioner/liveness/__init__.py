"""Who is alive, judged without comparing clocks: watch (stamps standing still, shared per
host), clock (the storage's time), reap (stale claims and private folders), tidy (litter)."""
