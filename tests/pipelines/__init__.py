"""Tests of pipelines (the nightly knowledge job)."""
