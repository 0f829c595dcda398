from django.db import models


class Event(models.Model):
    """Lives in the "analytics" database (see shop.routers)."""

    kind = models.CharField(max_length=50)
    product_id = models.IntegerField(null=True)
