"""What the tests share: asset paths, running `pipeline-up` for real, and stand-in servers."""
