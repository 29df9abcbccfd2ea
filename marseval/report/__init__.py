"""Reporting: normalised scores, IQMs with stratified-bootstrap intervals, figures and tables."""
