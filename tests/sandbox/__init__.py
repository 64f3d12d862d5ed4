"""Tests for rlm_kernel.sandbox."""
