"""What a result is measured by: per-cell evidence, the judge's positive control, capability cost, inventory profiles, overlap analyses, the monitor's validity, tables and figures."""
