from django.http import JsonResponse
from django.urls import path

from catalog.models import Product


def product_count(request):
    return JsonResponse({"products": Product.objects.count()})


urlpatterns = [path("products/count", product_count)]
