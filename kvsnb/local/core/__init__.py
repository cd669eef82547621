"""What every Local KVS service shares: the AWS error classes (``errors``), request parsing,
validation and response shapes from the botocore service models (``protocol``), responses
whose payload is not JSON (``responses``), the NextToken codec (``tokens``) and the
messages to and from worker processes (``frames``) and giving freed memory back
(``memory``).

The bottom layer: it imports nothing else of ``kvsnb.local``.
"""
