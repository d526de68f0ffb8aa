"""The product: everything the apps do, with no Qt and no argparse."""
