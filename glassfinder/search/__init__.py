"""The query side: photo in, products out (or a clear refusal); the HTTP service and its page."""
