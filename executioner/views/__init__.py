"""What a person sees: run and pool status, --wait progress, attempts and job histories."""
