"""The load balancer and its traffic: HAProxy state and weights, the gates that judge a step,
and the bounded load generator.
"""
