using Microsoft.AspNetCore.Mvc;
using Microsoft.AspNetCore.Routing.Patterns;
using System.Collections.Frozen;
using System.Reflection;

namespace Conveyor.Api.Hosting;

/// <summary>
/// Refuses a query string naming a parameter the endpoint does not read (<c>GET /api/jobs?stauts=failed</c>)
/// with a 400 naming it and listing the ones it reads. Minimal APIs ignore such a parameter, so a misspelt
/// filter was answered as if it were absent: every job instead of the failed ones.
/// </summary>
/// <remarks>
/// The names an endpoint reads are taken from its handler, as Minimal APIs bind them: each parameter of a type
/// read from text (a string, a number, any type with a static <c>TryParse</c>) that is not in the route pattern,
/// under its <c>[FromQuery]</c> name if it has one. So a parameter added to a handler is accepted with no list to
/// keep beside it. Matched in any casing, as they are bound. An endpoint that reads no query parameter refuses
/// every one: <c>POST …/move?dryRun=true</c> was a real move, <c>POST /api/jobs/{kind}?runAt=…</c> ran at once.
/// </remarks>
internal static class KnownQueryParameters
{
    public static TBuilder RefuseUnknownQueryParameters<TBuilder>(this TBuilder builder)
        where TBuilder : IEndpointConventionBuilder
    {
        builder.Add(endpoint =>
        {
            var route = endpoint is RouteEndpointBuilder { RoutePattern: { } pattern } ? pattern : RoutePatternFactory.Parse("/");
            // Every endpoint here may answer this 400, also one whose handler has no 400 of its own.
            endpoint.Metadata.Add(new ProducesResponseTypeMetadata(
                StatusCodes.Status400BadRequest, typeof(HttpValidationProblemDetails), ["application/problem+json"]));
            endpoint.FilterFactories.Add((factory, next) =>
            {
                var names = QueryNames(factory.MethodInfo, route);
                var accepted = names.ToFrozenSet(StringComparer.OrdinalIgnoreCase);
                string[] unknown = [names.Count == 0
                    ? "Is not a parameter of this request; it takes none in its query string."
                    : $"Is not a parameter of this request; the parameters are: {string.Join(", ", names)}."];
                return context =>
                {
                    var query = context.HttpContext.Request.Query;
                    if (query.Count == 0)
                    {
                        // Every submission: nothing to look at, nothing allocated.
                        return next(context);
                    }

                    var refused = query.Keys
                        .Where(key => !accepted.Contains(key))
                        .ToDictionary(key => key, _ => unknown, StringComparer.Ordinal);
                    return refused.Count == 0 ? next(context) : ValueTask.FromResult<object?>(TypedResults.ValidationProblem(refused));
                };
            });
        });
        return builder;
    }

    /// <summary>The query parameters <paramref name="handler"/> reads, in its order.</summary>
    internal static IReadOnlyList<string> QueryNames(MethodInfo handler, RoutePattern route) =>
    [
        .. handler.GetParameters()
            .Select(parameter => parameter.GetCustomAttribute<FromQueryAttribute>() is { } fromQuery
                ? fromQuery.Name ?? parameter.Name
                : IsBoundFromText(parameter) && route.GetParameter(parameter.Name!) is null ? parameter.Name : null)
            .OfType<string>(),
    ];

    /// <summary>
    /// A parameter Minimal APIs bind from the route or the query string: of a type read from text, without an
    /// attribute sending it elsewhere (body, header, form, services, <c>[AsParameters]</c>).
    /// </summary>
    private static bool IsBoundFromText(ParameterInfo parameter)
    {
        if (parameter.GetCustomAttributes().Any(attribute => attribute is FromBodyAttribute or FromHeaderAttribute or FromFormAttribute
            or FromServicesAttribute or FromRouteAttribute or FromKeyedServicesAttribute or AsParametersAttribute))
        {
            return false;
        }

        var type = parameter.ParameterType;
        type = type.IsArray ? type.GetElementType()! : type;
        type = Nullable.GetUnderlyingType(type) ?? type;
        return type == typeof(string) || type.IsPrimitive || type.IsEnum
            || type.GetMethods(BindingFlags.Public | BindingFlags.Static).Any(method => method.Name == "TryParse");
    }
}
