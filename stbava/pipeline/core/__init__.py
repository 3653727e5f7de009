"""What every pipeline job shares: process groups (``distributed``), embedding sources (``sources``), the network
of each stage (``net``) and its rebuilding from a checkpoint (``restore``), and the errors that are the user's
input rather than a bug (``user_errors``). Imports no other pipeline sub-package."""
