"""/v1/webhooks: endpoints a tenant registers (create, list, delete) and each one's delivery log."""

from fastapi import APIRouter

from app.deps import DbDep, RequestContext
from app.pagination import AfterQuery, LimitQuery, ListObject
from app.webhooks import service
from app.webhooks.schemas import DeliveryObject, WebhookCreate, WebhookCreated, WebhookDeleted, WebhookObject

router = APIRouter(tags=["webhooks"])


@router.post("/webhooks", status_code=201)
async def create_webhook(body: WebhookCreate, db: DbDep) -> WebhookCreated:
    # `run`, not `read`: the URL check resolves the host, blocking I/O.
    return await db.run(
        lambda ctx: service.create_endpoint(session=ctx.session, settings=ctx.settings, owner=ctx.owner, request=body)
    )


@router.get("/webhooks")
async def list_webhooks(db: DbDep, after: AfterQuery = None, limit: LimitQuery = 20) -> ListObject[WebhookObject]:
    def work(ctx: RequestContext) -> ListObject[WebhookObject]:
        page = service.list_endpoints(session=ctx.session, owner=ctx.owner, after=after, limit=limit)
        return ListObject[WebhookObject](data=[WebhookObject.of(e) for e in page.items], has_more=page.has_more)

    return await db.read(work)


@router.delete("/webhooks/{webhook_id}")
async def delete_webhook(webhook_id: str, db: DbDep) -> WebhookDeleted:
    await db.run(lambda ctx: service.delete_endpoint(session=ctx.session, owner=ctx.owner, webhook_id=webhook_id))
    return WebhookDeleted(id=webhook_id)


@router.get("/webhooks/{webhook_id}/deliveries")
async def list_deliveries(
    webhook_id: str, db: DbDep, after: AfterQuery = None, limit: LimitQuery = 20
) -> ListObject[DeliveryObject]:
    def work(ctx: RequestContext) -> ListObject[DeliveryObject]:
        page = service.list_deliveries(
            session=ctx.session, owner=ctx.owner, webhook_id=webhook_id, after=after, limit=limit
        )
        return ListObject[DeliveryObject](data=[DeliveryObject.of(d) for d in page.items], has_more=page.has_more)

    return await db.read(work)
