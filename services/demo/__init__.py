"""`make demo`: the embedded default stack ranking the bundled sample creatives."""
