using Microsoft.AspNetCore.OpenApi;

namespace Conveyor.Api.Hosting;

/// <summary>
/// Decimals in the OpenAPI document: <c>format: decimal</c> (the format registry's exact decimal number), not the
/// <c>double</c> ASP.NET declares by default. A report's <c>totalMinor</c>, a decimal, can pass 2^53 and 64 bits; a
/// client generated from a document that calls it a double reads it as one and drops the digits the Api wrote.
/// </summary>
internal static class ExactDecimals
{
    public static OpenApiOptions DeclareDecimalsExact(this OpenApiOptions options) =>
        options.AddSchemaTransformer((schema, context, _) =>
        {
            if (context.JsonTypeInfo.Type == typeof(decimal))
            {
                schema.Format = "decimal";
            }

            return Task.CompletedTask;
        });
}
