"""The harness that measures the product: eval, calibration, reports. The product never imports it."""
