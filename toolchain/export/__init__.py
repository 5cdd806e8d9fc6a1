"""`edgetl export`: convert, judge against the budget, and commit the shipped set as one transaction."""
