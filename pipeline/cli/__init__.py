"""The command-line tools, one thin module each: pipeline-up (up), pipeline-attach (attach),
pipeline-top (top), pipeline-trace (trace), pipeline-clean (clean), pipeline-export (export)."""
