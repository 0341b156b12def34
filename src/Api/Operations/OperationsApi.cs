using Conveyor.Api.Hosting;
using Conveyor.Api.Jobs;
using Conveyor.Api.Security;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Operations;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Operations;

/// <summary>
/// <c>/api/operations</c> (progress and results of moves and purges) and <c>/api/audit</c>. Admin only.
/// Each shows the operations of this Api's vhost (<see cref="ErrorQueueOperationQueries.OfVirtualHost"/>):
/// deployments on other vhosts may share the database.
/// </summary>
internal static class OperationsApi
{
    public const int DefaultListLimit = 50;
    public const int MaxListLimit = 500;

    public static IEndpointRouteBuilder MapOperationsApi(this IEndpointRouteBuilder endpoints)
    {
        var operations = endpoints.MapGroup("/api/operations")
            .WithTags("Error queues")
            .RequireAuthorization(ApiPolicies.Admin)
            .RefuseRepeatedQueryParameters()
            .RefuseUnknownQueryParameters()
            .ProducesCallerProblems();

        operations.MapGet("/", ListOperations)
            .WithName("ListOperations")
            .WithSummary("Recent moves and purges, newest first; state=running shows those in progress; before=<operationId> continues after that one.");

        operations.MapGet("/{operationId}", GetOperation)
            .WithName("GetOperation")
            .WithSummary("Progress and result of one move or purge.")
            .ProducesProblem(StatusCodes.Status404NotFound);

        endpoints.MapGet("/api/audit", Audit)
            .WithTags("Error queues")
            .RequireAuthorization(ApiPolicies.Admin)
            .RefuseRepeatedQueryParameters()
            .RefuseUnknownQueryParameters()
            .WithName("Audit")
            .WithSummary("Who moved or purged what, when, from where to where, with which filter, how many and which messages; before=<operationId> continues after that one.")
            .ProducesCallerProblems();

        return endpoints;
    }

    internal static async Task<Results<Ok<OperationView>, ValidationProblem, ProblemHttpResult>> GetOperation(
        string operationId, ConveyorDbContext db, AbandonedOperations abandoned, IOptions<RabbitMqOptions> rabbit,
        CancellationToken cancellationToken)
    {
        if (!RouteIds.TryParse(operationId, nameof(operationId), out var id, out var invalid))
        {
            return invalid;
        }

        var operations = db.ErrorQueueOperations.AsNoTracking().OfVirtualHost(rabbit.Value.VirtualHost);
        var operation = await operations.FirstOrDefaultAsync(o => o.Id == id, cancellationToken);
        if (operation?.State == ErrorQueueOperationStates.Running && await abandoned.SettleAsync(cancellationToken) > 0)
        {
            operation = await operations.FirstOrDefaultAsync(o => o.Id == id, cancellationToken);
        }

        return operation is null
            ? TypedResults.Problem(statusCode: StatusCodes.Status404NotFound, title: "Operation not found", detail: $"There is no operation {id}.")
            : TypedResults.Ok(OperationView.From(operation));
    }

    internal static async Task<Results<Ok<IReadOnlyList<OperationView>>, ValidationProblem>> ListOperations(
        string? queue, string? state, string? limit, string? before, ConveyorDbContext db, AbandonedOperations abandoned,
        IOptions<RabbitMqOptions> rabbit, CancellationToken cancellationToken)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        string[] states =
        [
            ErrorQueueOperationStates.Running, ErrorQueueOperationStates.Succeeded, ErrorQueueOperationStates.Failed,
            ErrorQueueOperationStates.Cancelled, ErrorQueueOperationStates.Interrupted,
        ];
        if (state is not null && !states.Contains(state, StringComparer.Ordinal))
        {
            errors["state"] = [$"Must be one of {string.Join(", ", states)}."];
        }

        CheckText(queue, nameof(queue), errors);
        var count = ReadLimit(limit, errors);
        var after = ReadBefore(before, errors);
        if (errors.Count > 0)
        {
            return TypedResults.ValidationProblem(errors);
        }

        await abandoned.SettleAsync(cancellationToken);
        var operations = db.ErrorQueueOperations.AsNoTracking().OfVirtualHost(rabbit.Value.VirtualHost);
        var query = queue is null ? operations : operations.Where(o => o.Queue == queue);
        query = state is null ? query : query.Where(o => o.State == state);
        return await PageAsync(operations, query, after, count, cancellationToken);
    }

    internal static async Task<Results<Ok<IReadOnlyList<OperationView>>, ValidationProblem>> Audit(
        string? queue, string? requestedBy, string? since, string? limit, string? before, ConveyorDbContext db,
        AbandonedOperations abandoned, IOptions<RabbitMqOptions> rabbit, CancellationToken cancellationToken)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        DateTimeOffset? from = null;
        if (since is not null)
        {
            // As a move's filter reads its times: never a culture's format, such as 12/01/2026.
            if (IsoTimes.TryParse(since, out var parsed))
            {
                from = parsed;
            }
            else
            {
                errors["since"] = [IsoTimes.Expected];
            }
        }

        CheckText(queue, nameof(queue), errors);
        CheckText(requestedBy, nameof(requestedBy), errors);
        var count = ReadLimit(limit, errors);
        var after = ReadBefore(before, errors);
        if (errors.Count > 0)
        {
            return TypedResults.ValidationProblem(errors);
        }

        await abandoned.SettleAsync(cancellationToken);
        var operations = db.ErrorQueueOperations.AsNoTracking().OfVirtualHost(rabbit.Value.VirtualHost);
        var query = queue is null ? operations : operations.Where(o => o.Queue == queue);
        query = requestedBy is null ? query : query.Where(o => o.RequestedBy == requestedBy);
        query = from is null ? query : query.Where(o => o.CreatedAt >= from);
        return await PageAsync(operations, query, after, count, cancellationToken);
    }

    /// <summary>
    /// One page of <paramref name="query"/>, newest first (operations created in the same instant by id). With
    /// <paramref name="before"/>, the page starts after that operation, as the previous page listed it: a client reads
    /// past the newest <see cref="MaxListLimit"/> by passing the id of the last one it got, so every entry of the audit
    /// trail can be read. The operation is looked up among all of this vhost's (it may have changed state since, or
    /// be one that no longer matches a filter); one that is not there is a 400 naming <c>before</c>.
    /// </summary>
    private static async Task<Results<Ok<IReadOnlyList<OperationView>>, ValidationProblem>> PageAsync(
        IQueryable<ErrorQueueOperation> operations, IQueryable<ErrorQueueOperation> query, Guid? before, int count,
        CancellationToken cancellationToken)
    {
        if (before is { } id)
        {
            var last = await operations.Where(o => o.Id == id).Select(o => (DateTimeOffset?)o.CreatedAt).FirstOrDefaultAsync(cancellationToken);
            if (last is not { } createdAt)
            {
                return TypedResults.ValidationProblem(new Dictionary<string, string[]>(StringComparer.Ordinal)
                {
                    ["before"] = [$"There is no operation {id}: give the operationId of the last entry of the previous page."],
                });
            }

            query = query.Where(o => o.CreatedAt < createdAt || (o.CreatedAt == createdAt && o.Id.CompareTo(id) < 0));
        }

        var rows = await query.OrderByDescending(o => o.CreatedAt).ThenByDescending(o => o.Id).Take(count).ToListAsync(cancellationToken);
        return TypedResults.Ok<IReadOnlyList<OperationView>>([.. rows.Select(OperationView.From)]);
    }

    private static Guid? ReadBefore(string? text, Dictionary<string, string[]> errors)
    {
        if (text is null)
        {
            return null;
        }

        if (Guid.TryParse(text, out var id))
        {
            return id;
        }

        errors["before"] = ["Must be an operation id (a UUID), such as the operationId of the last entry of the previous page."];
        return null;
    }

    /// <summary>A filter compared with a text column: text PostgreSQL refuses there (a NUL) would be a 500.</summary>
    private static void CheckText(string? text, string parameter, Dictionary<string, string[]> errors)
    {
        if (text is not null && FieldRules.Text(text) is { } problem)
        {
            errors[parameter] = [problem];
        }
    }

    private static int ReadLimit(string? text, Dictionary<string, string[]> errors)
    {
        if (QueryIntegers.TryRead(text, DefaultListLimit, 1, MaxListLimit, out var limit))
        {
            return limit;
        }

        errors["limit"] = [$"Must be an integer between 1 and {MaxListLimit}."];
        return 0;
    }
}
